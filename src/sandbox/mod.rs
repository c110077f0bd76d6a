//! Faithful fakes of a Bitrix24 portal and a Slack workspace, built from
//! `contracts/bitrix24.md` and `contracts/slack.md`: the end-to-end suites run the bridge
//! against them, and `livefeed-bridge sandbox` starts them for a demo without accounts.

pub mod bitrix;
pub mod demo;
pub mod slack;
