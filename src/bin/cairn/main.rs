//! The `cairn` command: flags → options → one library call → outcome → text or `--json`.
//! This file only dispatches: `args` holds the flags, `commands` one module per group of
//! subcommands, `render` the output helpers they share.

mod args;
mod commands;
mod render;

use anyhow::Result;
use args::{Cli, Cmd};
use clap::Parser;
use commands::{check, checkout, commit, gc, init, log, refs, remote, show};

fn run(cli: Cli) -> Result<()> {
    let s = cli.store.as_deref();
    match cli.cmd {
        Cmd::Init(a) => init::run(s, a),
        Cmd::Commit(a) => commit::run(s, *a),
        Cmd::Log(a) => log::log(s, a),
        Cmd::Runs(a) => log::runs(s, a),
        Cmd::Verify(a) => check::verify(s, a),
        Cmd::Show(a) => show::show(s, a),
        Cmd::Diff(a) => show::diff(s, a),
        Cmd::Checkout(a) => checkout::checkout(s, a),
        Cmd::Cat(a) => checkout::cat(s, a),
        Cmd::Tensor(a) => checkout::tensor(s, a),
        Cmd::Branch(a) => refs::branch(s, a),
        Cmd::Switch(a) => refs::switch(s, a),
        Cmd::Tag(a) => refs::tag(s, a),
        Cmd::Reflog(a) => refs::reflog(s, a),
        Cmd::Stats(a) => show::stats(s, a),
        Cmd::Gc(a) => gc::gc(s, *a),
        Cmd::Retention { cmd } => gc::retention(s, cmd),
        Cmd::Fsck(a) => check::fsck(s, a),
        Cmd::Repair(a) => check::repair(s, a),
        Cmd::Remote { cmd } => remote::remote(s, cmd),
        Cmd::Push(a) => remote::push(s, a),
        Cmd::Fetch(a) => remote::fetch(s, a),
        Cmd::Pull(a) => remote::pull(s, a),
        Cmd::Clone(a) => remote::clone(a),
    }
}

fn main() {
    let cli = Cli::parse();
    let result = run(cli);
    cairn::storage::crashsim::finish();
    if let Err(e) = result {
        // Scripts piping into `head` close stdout early; that is not an error worth a message.
        // A broken pipe to anything else is.
        if render::stdout_closed(&e) {
            std::process::exit(0);
        }
        eprintln!("error: {}", render::escape_controls(&e.to_string()));
        for cause in e.chain().skip(1) {
            eprintln!(
                "  caused by: {}",
                render::escape_controls(&cause.to_string())
            );
        }
        std::process::exit(1);
    }
}
