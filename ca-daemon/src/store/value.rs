//! The values that cross the store's boundary: [`Val`], bound to a placeholder, and [`Cell`],
//! read from a column, with their conversions for both backends. The schema keeps every
//! number a 64-bit integer and every flag an integer 0/1 in both dialects, so these four
//! shapes are all the store needs.

use std::error::Error;

use bytes::BytesMut;
use rusqlite::types::{ToSqlOutput, ValueRef};
use tokio_postgres::types::{accepts, to_sql_checked, FromSql, IsNull, ToSql, Type};

/// A value bound to a placeholder.
#[derive(Debug, Clone, Copy)]
pub enum Val<'v> {
    /// SQL NULL (of whatever type the placeholder has).
    Null,
    /// An integer (a flag is 0 or 1).
    Int(i64),
    /// Text.
    Text(&'v str),
    /// Bytes.
    Blob(&'v [u8]),
}

/// What can be bound to a placeholder (by reference, as `params!` takes its values).
pub trait AsVal {
    /// The value to bind.
    fn as_val(&self) -> Val<'_>;
}

impl AsVal for i64 {
    fn as_val(&self) -> Val<'_> {
        Val::Int(*self)
    }
}

impl AsVal for u32 {
    fn as_val(&self) -> Val<'_> {
        Val::Int(i64::from(*self))
    }
}

impl AsVal for bool {
    fn as_val(&self) -> Val<'_> {
        Val::Int(i64::from(*self))
    }
}

impl AsVal for str {
    fn as_val(&self) -> Val<'_> {
        Val::Text(self)
    }
}

impl AsVal for String {
    fn as_val(&self) -> Val<'_> {
        Val::Text(self)
    }
}

impl AsVal for [u8] {
    fn as_val(&self) -> Val<'_> {
        Val::Blob(self)
    }
}

impl AsVal for Vec<u8> {
    fn as_val(&self) -> Val<'_> {
        Val::Blob(self)
    }
}

impl<T: AsVal + ?Sized> AsVal for &T {
    fn as_val(&self) -> Val<'_> {
        (**self).as_val()
    }
}

impl<T: AsVal> AsVal for Option<T> {
    fn as_val(&self) -> Val<'_> {
        self.as_ref().map_or(Val::Null, AsVal::as_val)
    }
}

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Val::Null => ValueRef::Null,
            Val::Int(v) => ValueRef::Integer(v),
            Val::Text(s) => ValueRef::Text(s.as_bytes()),
            Val::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl ToSql for Val<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match *self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::BOOL => (v != 0).to_sql(ty, out),
                _ => Err(format!("an integer cannot be bound to a {ty} placeholder").into()),
            },
            Val::Text(s) => s.to_sql(ty, out),
            Val::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A value read from a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// An integer, or a boolean as 0/1.
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl From<ValueRef<'_>> for Cell {
    fn from(v: ValueRef<'_>) -> Self {
        match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(v) => Cell::Int(v),
            // No column of the schema is REAL; a float read is kept visible, not rounded.
            ValueRef::Real(f) => Cell::Text(f.to_string()),
            // Text that is not UTF-8 reads as bytes, which a text column refuses.
            ValueRef::Text(t) => match std::str::from_utf8(t) {
                Ok(s) => Cell::Text(s.to_owned()),
                Err(_) => Cell::Blob(t.to_vec()),
            },
            ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
        }
    }
}

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(match *ty {
            Type::INT8 => Cell::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Cell::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Cell::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Cell::Int(bool::from_sql(ty, raw)?.into()),
            Type::BYTEA => Cell::Blob(<Vec<u8>>::from_sql(ty, raw)?),
            _ => Cell::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Cell::Null)
    }

    accepts!(INT8, INT4, INT2, BOOL, BYTEA, TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN);
}

/// A column's value as a Rust type.
pub trait FromCell: Sized {
    /// Converts, or says what the column held instead.
    fn from_cell(c: Cell) -> Result<Self, String>;
}

fn wrong(c: &Cell, want: &str) -> String {
    let got = match c {
        Cell::Null => "NULL",
        Cell::Int(_) => "an integer",
        Cell::Text(_) => "text",
        Cell::Blob(_) => "bytes",
    };
    format!("expected {want}, found {got}")
}

impl FromCell for i64 {
    fn from_cell(c: Cell) -> Result<Self, String> {
        match c {
            Cell::Int(v) => Ok(v),
            c => Err(wrong(&c, "an integer")),
        }
    }
}

impl FromCell for bool {
    fn from_cell(c: Cell) -> Result<Self, String> {
        match c {
            Cell::Int(v) => Ok(v != 0),
            c => Err(wrong(&c, "a flag")),
        }
    }
}

impl FromCell for String {
    fn from_cell(c: Cell) -> Result<Self, String> {
        match c {
            Cell::Text(s) => Ok(s),
            c => Err(wrong(&c, "text")),
        }
    }
}

impl FromCell for Vec<u8> {
    fn from_cell(c: Cell) -> Result<Self, String> {
        match c {
            Cell::Blob(b) => Ok(b),
            c => Err(wrong(&c, "bytes")),
        }
    }
}

impl<T: FromCell> FromCell for Option<T> {
    fn from_cell(c: Cell) -> Result<Self, String> {
        match c {
            Cell::Null => Ok(None),
            c => T::from_cell(c).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_of_the_wrong_type_is_an_error_that_says_what_it_found() {
        assert_eq!(i64::from_cell(Cell::Int(7)), Ok(7));
        assert!(bool::from_cell(Cell::Int(1)).unwrap());
        assert_eq!(
            i64::from_cell(Cell::Text("7".into())),
            Err("expected an integer, found text".to_owned())
        );
        assert_eq!(<Option<String>>::from_cell(Cell::Null), Ok(None));
        assert!(String::from_cell(Cell::Null).is_err());
    }
}
