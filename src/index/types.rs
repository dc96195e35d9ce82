//! The domain types as the index stores them: UIDs, transfer syntaxes, object keys,
//! digests and order ids are TEXT columns, parsed again on the way out, so that rows come
//! back typed (`FromRow`) and a column that no longer parses is a decoding error, not a
//! string that fails somewhere later. Both drivers: sqlx's `Any` (reads, PostgreSQL
//! writes) and rusqlite (the SQLite writer's own connection).

use std::borrow::Cow;

use sqlx::any::Any;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};

use super::uploads::UploadState;
use crate::model::{ObjectKey, OrderId, Sha256, TransferSyntax, Uid};

/// How a type is written as text and read back.
trait TextColumn: Sized {
    /// Borrowed where the type holds its text (UIDs, keys…), made where it does not (digests).
    fn to_text(&self) -> Cow<'_, str>;
    fn from_text(text: String) -> Result<Self, BoxDynError>;
}

macro_rules! text_column {
    ($($ty:ty => $write:expr;)*) => {$(
        impl TextColumn for $ty {
            fn to_text(&self) -> Cow<'_, str> {
                let write: fn(&$ty) -> Cow<'_, str> = $write;
                write(self)
            }
            fn from_text(text: String) -> Result<Self, BoxDynError> {
                <$ty>::try_from(text).map_err(|e| e.to_string().into())
            }
        }

        impl Type<Any> for $ty {
            fn type_info() -> <Any as Database>::TypeInfo {
                <String as Type<Any>>::type_info()
            }
        }

        impl<'q> Encode<'q, Any> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut <Any as Database>::ArgumentBuffer<'q>,
            ) -> Result<IsNull, BoxDynError> {
                <String as Encode<'q, Any>>::encode(self.to_text().into_owned(), buf)
            }
        }

        impl<'r> Decode<'r, Any> for $ty {
            fn decode(value: <Any as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                Self::from_text(<String as Decode<'r, Any>>::decode(value)?)
            }
        }

        impl rusqlite::ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(match self.to_text() {
                    Cow::Borrowed(text) => rusqlite::types::ToSqlOutput::from(text),
                    Cow::Owned(text) => rusqlite::types::ToSqlOutput::from(text),
                })
            }
        }

        impl rusqlite::types::FromSql for $ty {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let text = String::column_result(value)?;
                Self::from_text(text).map_err(rusqlite::types::FromSqlError::Other)
            }
        }
    )*};
}

text_column! {
    Uid => |v| Cow::Borrowed(v.as_str());
    TransferSyntax => |v| Cow::Borrowed(v.as_str());
    ObjectKey => |v| Cow::Borrowed(v.as_str());
    Sha256 => |v| Cow::Owned(v.to_hex());
    OrderId => |v| Cow::Borrowed(v.as_str());
    UploadState => |v| Cow::Borrowed(v.as_str());
}
