//! One module per group of subcommands, each turning its parsed flags into library options,
//! making the library call and rendering the outcome as text or `--json`. This module holds
//! what they share: finding and opening the store, and the default author. Those read the
//! environment, which the library never does.

pub mod check;
pub mod checkout;
pub mod commit;
pub mod gc;
pub mod init;
pub mod log;
pub mod refs;
pub mod remote;
pub mod show;

use anyhow::{Context, Result};
use cairn::Store;
use std::path::{Path, PathBuf};

/// The author of a commit or ref move: the explicit one, else $CAIRN_AUTHOR, else user@host.
pub fn author(explicit: Option<String>) -> String {
    explicit
        .or_else(|| std::env::var("CAIRN_AUTHOR").ok())
        .unwrap_or_else(|| {
            let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into());
            format!("{user}@{host}")
        })
}

/// The config file: `$CAIRN_CONFIG`, else `$XDG_CONFIG_HOME/cairn/config.json`, else
/// `~/.config/cairn/config.json` (docs/cli.md, "Configuration").
pub fn config_path() -> PathBuf {
    cairn::storage::store::config_path(
        std::env::var_os("CAIRN_CONFIG").as_deref(),
        std::env::var_os("XDG_CONFIG_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

/// The store directory from `--store`, else $CAIRN_STORE, else the nearest `.cairn` upward
/// (which another user must not own unless the config file lists it as safe).
pub fn store_path(cli_store: Option<&Path>) -> Result<PathBuf> {
    let env = std::env::var_os("CAIRN_STORE").map(PathBuf::from);
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let config_path = config_path();
    let config = if cli_store.is_none() && env.is_none() {
        cairn::storage::store::Config::load(&config_path)?
    } else {
        Default::default()
    };
    Ok(cairn::storage::store::discover(
        &cairn::storage::store::Discovery {
            explicit: cli_store,
            env: env.as_deref(),
            cwd: &cwd,
            safe_stores: &config.safe_stores,
            config_path: &config_path.display().to_string(),
        },
    )?)
}

/// Open the store; a lazy clone gets its remote attached, so chunks it lacks are fetched on
/// first read (with the `AWS_*` settings, read here).
pub fn open(cli_store: Option<&Path>) -> Result<Store> {
    let p = store_path(cli_store)?;
    let store = Store::open(&p)?;
    cairn::ops::sync::attach_lazy(&store, &remote::options())?;
    Ok(store)
}
