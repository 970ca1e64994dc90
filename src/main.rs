fn main() {
    if let Err(error) = mobilenet::run_cli() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
