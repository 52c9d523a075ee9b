//! The `gatehouse` binary: parse the command line, set up logging, hand over to `app`.

use gatehouse::config::{Command, ConfigAction, KeysAction};

/// jemalloc, with its background threads giving freed memory back to the system within
/// seconds: after 10,000 streams close, RSS falls from ~340 MiB to ~56 MiB, where glibc's
/// malloc and mimalloc keep ~330 and ~490 MiB (ARCHITECTURE.md, "Memory"). The features
/// `system-allocator` and `mimalloc-allocator` build with the others, to compare.
#[cfg(not(any(feature = "system-allocator", feature = "mimalloc-allocator")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc-allocator", not(feature = "system-allocator")))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    gatehouse::disk::private_by_default();
    let (cli, file_keys) = match gatehouse::config::parse_cli(std::env::args_os().collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let env_keys = std::env::var("GATEHOUSE_API_KEY").ok().filter(|k| !k.trim().is_empty());
    let api_keys = env_keys.or_else(|| (!file_keys.is_empty()).then(|| file_keys.join(",")));
    // Colours only on a terminal: journald and log files get plain text. The scheduler
    // library's start-up chatter stays out of the default `info` log.
    use std::io::IsTerminal;
    let filter = std::env::var("GATEHOUSE_LOG").ok().filter(|f| !f.trim().is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(
            filter
                .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
                .unwrap_or_else(|| "info,tokio_cron_scheduler=warn".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
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
        Some(Command::Migrate(args)) => {
            gatehouse::store::migrate_data_dir(&args.data_dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", args.data_dir.display()))?;
            println!("{} is in this version's format", args.data_dir.display());
            return Ok(());
        }
        Some(Command::Config { action: ConfigAction::Check(args) }) => {
            let settings = args.validate(api_keys)?;
            if !settings.api_keys.is_empty() {
                gatehouse::tokens::KeyRing::new(&settings.api_keys).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            tokio_cron_scheduler::Job::new_async(settings.housekeeping_cron.as_str(), |_, _| Box::pin(async {}))
                .map_err(|e| anyhow::anyhow!("housekeeping_cron: {e}"))?;
            print!("configuration is valid; effective settings:\n{}", settings.describe());
            if let Some(janus) = &settings.janus {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                match rt.block_on(gatehouse::janus::check(janus)) {
                    Ok(report) => print!("{report}"),
                    Err(e) => {
                        eprintln!("janus: {e}");
                        std::process::exit(1);
                    }
                }
            }
            if let Some(acme) = &settings.acme {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                print!("{}", gatehouse::acme::report(acme, &settings.data_dir, now));
            }
            if let Some(etcd) = &settings.etcd {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                match rt.block_on(gatehouse::cluster::check(etcd)) {
                    Ok(report) => print!("{report}"),
                    Err(report) => {
                        eprintln!("{report}");
                        std::process::exit(1);
                    }
                }
            }
            return Ok(());
        }
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    let settings = args.validate(api_keys)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(gatehouse::app::run(settings))
}
