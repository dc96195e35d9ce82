//! C-ECHO (PS3.7 §9.1.5): answer Success.

use super::command::{field, response, Request};
use super::status::Status;

/// The C-ECHO-RSP command for a request.
pub fn handle(request: &Request) -> Vec<u8> {
    response(request, field::C_ECHO_RSP, Status::SUCCESS)
}
