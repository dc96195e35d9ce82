//! C-ECHO (PS3.7 §9.1.5): answer Success.

use super::command::{field, response, Request};

/// The C-ECHO-RSP command for a request.
pub fn handle(request: &Request) -> Vec<u8> {
    response(request, field::C_ECHO_RSP, 0x0000)
}
