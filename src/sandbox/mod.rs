//! Faithful fakes of a Bitrix24 portal and a Slack workspace, for tests and demos.
pub mod demo;
