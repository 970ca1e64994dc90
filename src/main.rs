use clap::Parser;

fn main() {
    let cli = mobilenet::cli::Cli::parse();
    if let Err(error) = mobilenet::cli::run(cli) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
