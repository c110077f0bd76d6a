//! TEMPORARY stub until the fakes land.
use std::path::Path;
use std::process::ExitCode;
pub async fn run(_config: &Path, _port: u16) -> ExitCode {
    ExitCode::FAILURE
}
