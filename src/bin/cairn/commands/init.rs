//! `cairn init`: create a store where `--store` or $CAIRN_STORE says, else `./.cairn`. Unlike
//! every other command it does not search upward: a new store goes exactly where asked.

use crate::args::InitArgs;
use crate::render::{out, print_json};
use anyhow::Result;
use cairn::Store;
use std::path::{Path, PathBuf};

pub fn run(cli_store: Option<&Path>, a: InitArgs) -> Result<()> {
    let path = match cli_store
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("CAIRN_STORE").map(PathBuf::from))
    {
        Some(p) => p,
        None => std::env::current_dir()?.join(cairn::storage::store::DEFAULT_DIR),
    };
    let store = Store::init(&path)?;
    if a.json {
        print_json(&serde_json::json!({
            "store": path, "store_id": store.store_id(), "branch": store.current_branch()?
        }))?;
    } else {
        out!("Initialized empty cairn store in {}", path.display());
    }
    Ok(())
}
