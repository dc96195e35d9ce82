//! HL7 v2 in (issue 17, under construction): the pieces a listener for orders over MLLP is
//! built from — framing (`mllp.rs`), the message's character set and text (`text.rs`,
//! MSH-18), and acknowledgements (`ack.rs`). Parsing itself is hl7kit's (segments,
//! fields, repetitions, components, escapes, delimiters from MSH-2).

pub mod ack;
pub mod mllp;
pub mod orders;
pub mod text;

pub use ack::{ack, AckCode, Refusal};
pub use mllp::{Mllp, MllpError};
pub use text::Charset;
