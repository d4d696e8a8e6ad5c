fn main() -> std::process::ExitCode {
    sbx::cli::main()
}
