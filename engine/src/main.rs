//! The `switchyard` binary: parse the command line, set up logging, load the configuration,
//! then serve (or check the configuration, migrate, or run an account command, and exit).
//! Everything else lives in the library.

use anyhow::Context;
use clap::Parser;
use engine::cli::{Cli, Command};
use engine::config::{Config, ProcessEnv};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Chat(args)) = &cli.command {
        let _telemetry = engine::telemetry::init(cli.log_format, &Default::default());
        return actix_rt::System::new().block_on(engine::chat_cli::run(args.clone()));
    }
    let mut config = Config::load(cli.config.as_deref(), &ProcessEnv)
        .context("failed to load the configuration")?;
    if let Some(listen) = cli.listen {
        config.server.listen = listen;
    }
    // Logging starts once the configuration says how (level, trace export); an error loading
    // it is printed by `main` returning it. Dropping the guard at exit flushes the spans.
    let _telemetry = engine::telemetry::init(cli.log_format, &config.telemetry);
    match cli.command() {
        Command::CheckConfig => {
            println!("{}", engine::server::describe(&config));
            Ok(())
        }
        Command::Serve => actix_rt::System::new().block_on(engine::server::serve(config)),
        Command::Migrate => {
            let report =
                actix_rt::System::new().block_on(engine::store::migrate::command(&config))?;
            println!("{report}");
            Ok(())
        }
        Command::Tenant(_) | Command::User(_) | Command::Keys(_) => {
            let command = cli.command();
            let read_password = || {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map(|_| line)
            };
            let output = actix_rt::System::new().block_on(engine::auth::admin::run(
                &config,
                &command,
                read_password,
            ))?;
            println!("{output}");
            Ok(())
        }
        Command::Chat(_) => Ok(()),
    }
}
