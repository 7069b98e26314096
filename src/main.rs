fn main() -> std::process::ExitCode {
    crcd::cli::main()
}
