//! PS3.15 Table E.1-1 (Application Level Confidentiality Profile Attributes) as data: for
//! every attribute of the table that the standard dictionary names, its action under the
//! Basic Profile and whether the two options we offer — Retain Longitudinal Temporal
//! Information with Full Dates, Retain Device Identity — keep (or clean) it instead.
//!
//! Transcribed from the 2025 edition of the table (617 single attributes, retired ones
//! included: old objects still carry them). The table's four ranges are not rows here but
//! rules in the parent module: private attributes (odd groups), curve data (50xx,eeee),
//! overlay data and comments (60xx,3000 / 60xx,4000). Rows are sorted by tag so that
//! [`rule`] is a binary search; a test keeps them so.
//!
//! This file holds data and nothing else, so that the logic beside it stays small: a row
//! reads `option(tags::NAME, basic action)`, where the function says which option columns
//! are filled in.

use dicom_core::Tag;

/// An action of the Basic Profile column, named after the standard's codes (PS3.15 E.1.1).
#[allow(clippy::upper_case_acronyms)] // the names are the standard's action codes
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basic {
    /// Replace with a non-empty dummy value of the VR.
    D,
    /// Replace with an empty value (or a dummy).
    Z,
    /// Remove.
    X,
    /// Replace with a UID consistent within the set of instances.
    U,
    /// X unless Z is required (Type 3 versus Type 2).
    XZ,
    /// X unless D is required (Type 3 versus Type 1).
    XD,
    /// X unless Z or D is required (Type 3 versus 2 versus 1).
    XZD,
    /// Z unless D is required (Type 2 versus Type 1).
    ZD,
    /// X unless Z, or replacing the UIDs of the items, is required (reference sequences).
    XZU,
}

/// What an option column says for a row: nothing (the Basic action stands), keep, or clean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retain {
    No,
    Keep,
    Clean,
}

/// One row of Table E.1-1.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub tag: Tag,
    pub basic: Basic,
    /// The "Rtn. Long. Full Dates Opt." column (it only ever says K).
    pub dates: Retain,
    /// The "Rtn. Dev. Id. Opt." column (K, or C for AE titles).
    pub device: Retain,
}

pub(super) const fn basic(tag: Tag, basic: Basic) -> Rule {
    Rule {
        tag,
        basic,
        dates: Retain::No,
        device: Retain::No,
    }
}

pub(super) const fn date(tag: Tag, basic: Basic) -> Rule {
    Rule {
        tag,
        basic,
        dates: Retain::Keep,
        device: Retain::No,
    }
}

pub(super) const fn device(tag: Tag, basic: Basic) -> Rule {
    Rule {
        tag,
        basic,
        dates: Retain::No,
        device: Retain::Keep,
    }
}

pub(super) const fn device_clean(tag: Tag, basic: Basic) -> Rule {
    Rule {
        tag,
        basic,
        dates: Retain::No,
        device: Retain::Clean,
    }
}

pub(super) const fn date_device(tag: Tag, basic: Basic) -> Rule {
    Rule {
        tag,
        basic,
        dates: Retain::Keep,
        device: Retain::Keep,
    }
}
