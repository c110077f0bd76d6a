//! The Bitrix24 side: REST client, poll intake, BBCode, authors, and the comment effects.
//! Bitrix24 field names stay in here.

pub mod adapter;
pub mod bbcode;
pub mod client;
pub mod intake;
pub mod people;
