//! The `switchyard` binary: parse the command line, set up logging, load the configuration,
//! then serve (or check the configuration and exit). Everything else lives in the library.

use anyhow::Context;
use clap::Parser;
use engine::cli::{Cli, Command};
use engine::config::{Config, ProcessEnv};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    engine::telemetry::init(cli.log_format);
    if let Some(Command::Chat(args)) = &cli.command {
        return actix_rt::System::new().block_on(engine::chat_cli::run(args.clone()));
    }
    let mut config = Config::load(cli.config.as_deref(), &ProcessEnv)
        .context("failed to load the configuration")?;
    if let Some(listen) = cli.listen {
        config.server.listen = listen;
    }
    match cli.command() {
        Command::CheckConfig => {
            println!("{}", engine::server::describe(&config));
            Ok(())
        }
        Command::Serve => actix_rt::System::new().block_on(engine::server::serve(config)),
        Command::Migrate => {
            let migrate = engine::store::migrate::command(&config);
            println!("{}", actix_rt::System::new().block_on(migrate)?);
            Ok(())
        }
        Command::Chat(_) => Ok(()),
    }
}
