//! The `gatehouse` binary: parse the command line, set up logging, hand over to `app`.

use clap::Parser;
use gatehouse::config::{Cli, Command, KeysAction};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = match cli.command {
        Some(Command::Keys { action: KeysAction::Generate }) => {
            println!("{}", gatehouse::app::generate_key());
            return Ok(());
        }
        Some(Command::Token(args)) => {
            println!("{}", gatehouse::app::mint_token(&args, std::env::var("GATEHOUSE_API_KEY").ok())?);
            return Ok(());
        }
        Some(Command::Backup(args)) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            return rt.block_on(gatehouse::app::backup(&args, std::env::var("GATEHOUSE_API_KEY").ok()));
        }
        Some(Command::Restore(args)) => return gatehouse::app::restore(&args),
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    let settings = args.validate(std::env::var("GATEHOUSE_API_KEY").ok())?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(gatehouse::app::run(settings))
}
