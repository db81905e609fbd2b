//! Live data documents as checks read them: each source's records indexed by key, only the fields its shape keeps, sharded so that a change copies one shard; pure, never fetches.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// How many shards a table has: a change copies one, about a 256th of the records. A key's
/// shard is the low byte of its hash.
const SHARDS: usize = 256;

/// What a source keeps of each document, as its `DataSource` declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The field whose value (a string or a number) is the record's key.
    pub key: Box<str>,
    /// The fields lookups may read, each a dotted path into the document (`profile.account`).
    pub fields: Box<[Box<str>]>,
    /// The fields the user-data header carries, when the source feeds it.
    pub header: Option<HeaderShape>,
    /// How many records and bytes the source may hold.
    pub limits: Limits,
}

/// The user-data header's part of a shape: which fields, and how long its value may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderShape {
    /// The fields copied into the header's JSON object, each a dotted path.
    pub fields: Box<[Box<str>]>,
    /// The longest header value (base64url text) a record may have.
    pub max_bytes: usize,
}

/// The most a source may hold; a change that would exceed either is refused whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Records.
    pub records: usize,
    /// Bytes of kept values, keys and header values, as [`Record::size`] counts them.
    pub bytes: usize,
}

/// One field's value as lookups see it: strings, numbers and booleans as their text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    /// Missing, `null`, or an object: it offers no value.
    Absent,
    /// A string, number or boolean.
    One(Box<str>),
    /// An array; its strings, numbers and booleans, in order (nested arrays and objects dropped).
    Many(Box<[Box<str>]>),
}

impl FieldValue {
    fn from_json(value: Option<&Value>) -> Self {
        match value {
            Some(Value::Array(items)) => Self::Many(items.iter().filter_map(scalar_text).collect()),
            Some(value) => scalar_text(value).map_or(Self::Absent, Self::One),
            None => Self::Absent,
        }
    }

    /// Every value it offers.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        let (one, many): (Option<&str>, &[Box<str>]) = match self {
            Self::Absent => (None, &[]),
            Self::One(value) => (Some(value), &[]),
            Self::Many(values) => (None, values),
        };
        one.into_iter().chain(many.iter().map(|value| &**value))
    }

    fn size(&self) -> usize {
        self.values().map(str::len).sum()
    }
}

fn scalar_text(value: &Value) -> Option<Box<str>> {
    match value {
        Value::String(text) => Some(text.as_str().into()),
        Value::Number(number) => Some(number.to_string().into()),
        Value::Bool(flag) => Some(flag.to_string().into()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The value at a dotted path of a JSON document.
fn at_path<'v>(document: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(document, |value, name| value.get(name))
}

/// Why a document cannot become a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The document is not a JSON object.
    #[error("the document is not a JSON object")]
    NotAnObject,
    /// The key field is missing, or not a string or a number.
    #[error("the document has no string or number in its key field `{0}`")]
    NoKey(Box<str>),
    /// The user-data header's value would be longer than the shape allows.
    #[error("the record's user-data header would be {actual} bytes, more than the {limit} allowed")]
    HeaderTooLarge {
        /// The value's length.
        actual: usize,
        /// The shape's limit.
        limit: usize,
    },
}

/// One document as lookups read it: the shape's fields in its order, and the user-data header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    values: Box<[FieldValue]>,
    header: Option<Box<str>>,
}

impl Record {
    /// The record a document becomes under `shape`, and its key.
    pub fn from_document(shape: &Shape, document: &Value) -> Result<(Arc<str>, Self), RecordError> {
        if !document.is_object() {
            return Err(RecordError::NotAnObject);
        }
        let key = Self::key_of(shape, document).ok_or_else(|| RecordError::NoKey(shape.key.clone()))?;
        let values = shape.fields.iter().map(|field| FieldValue::from_json(at_path(document, field))).collect();
        let header = shape.header.as_ref().map(|header| header_value(header, document)).transpose()?;
        Ok((key, Self { values, header }))
    }

    /// A document's key under `shape`: its key field's string or number, as text.
    pub fn key_of(shape: &Shape, document: &Value) -> Option<Arc<str>> {
        match at_path(document, &shape.key)? {
            Value::String(key) => Some(Arc::from(key.as_str())),
            Value::Number(key) => Some(Arc::from(key.to_string())),
            _ => None,
        }
    }

    /// The value of a field of the shape it was built with; `None` for a field it does not keep.
    pub fn field(&self, shape: &Shape, name: &str) -> Option<&FieldValue> {
        let slot = shape.fields.iter().position(|field| **field == *name)?;
        self.values.get(slot)
    }

    /// The user-data header's value: base64url (no padding) of the compact JSON object of the
    /// header's fields; `None` when the shape has no header.
    pub fn header(&self) -> Option<&str> {
        self.header.as_deref()
    }

    /// What the record counts against its source's byte limit: its values, its header and its
    /// key, plus a fixed 64 bytes of bookkeeping.
    pub fn size(&self, key: &str) -> usize {
        let values: usize = self.values.iter().map(FieldValue::size).sum();
        64 + key.len() + values + self.header.as_deref().map_or(0, str::len)
    }
}

fn header_value(header: &HeaderShape, document: &Value) -> Result<Box<str>, RecordError> {
    let object: serde_json::Map<String, Value> = header
        .fields
        .iter()
        .filter_map(|field| at_path(document, field).map(|value| (field.to_string(), value.clone())))
        .collect();
    let encoded = URL_SAFE_NO_PAD.encode(Value::Object(object).to_string());
    if encoded.len() > header.max_bytes {
        return Err(RecordError::HeaderTooLarge { actual: encoded.len(), limit: header.max_bytes });
    }
    Ok(encoded.into())
}

/// A change a source reports: a document written, or one removed.
#[derive(Debug, Clone)]
pub enum Change {
    /// The record for a key, new or replacing the one before.
    Put(Arc<str>, Arc<Record>),
    /// The key's record is gone.
    Remove(Arc<str>),
}

impl Change {
    /// The key the change is about.
    pub fn key(&self) -> &Arc<str> {
        match self {
            Self::Put(key, _) | Self::Remove(key) => key,
        }
    }
}

/// A source that would exceed its limits; the change is refused and the table before it stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the source would hold {records} records in {bytes} bytes, over its limits of {} records and {} bytes", .limits.records, .limits.bytes)]
pub struct OverLimit {
    /// Records after the change.
    pub records: usize,
    /// Bytes after the change.
    pub bytes: usize,
    /// The source's limits.
    pub limits: Limits,
}

type Shard = HashMap<Arc<str>, Arc<Record>>;

/// One source's records, immutable: a change makes a new table that shares every shard it did
/// not touch, so a lookup is one hash probe and a check never waits for a writer.
#[derive(Debug, Clone)]
pub struct Table {
    shape: Arc<Shape>,
    hasher: RandomState,
    shards: Box<[Arc<Shard>]>,
    records: usize,
    bytes: usize,
}

impl Table {
    /// An empty table of `shape`.
    pub fn new(shape: Arc<Shape>) -> Self {
        let shards = (0..SHARDS).map(|_| Arc::new(Shard::new())).collect();
        Self { shape, hasher: RandomState::new(), shards, records: 0, bytes: 0 }
    }

    /// The shape its records were built with.
    pub fn shape(&self) -> &Arc<Shape> {
        &self.shape
    }

    /// The record of a key.
    pub fn get(&self, key: &str) -> Option<&Record> {
        self.shards.get(self.shard_of(key))?.get(key).map(|record| &**record)
    }

    /// How many records it holds.
    pub fn records(&self) -> usize {
        self.records
    }

    /// How many bytes its records count (see [`Record::size`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The table after `changes`, in order; refused whole when it would exceed the shape's limits.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) -> Result<Self, OverLimit> {
        let mut next = self.clone();
        for change in changes {
            let (key, record) = match change {
                Change::Put(key, record) => (key, Some(record)),
                Change::Remove(key) => (key, None),
            };
            let at = next.shard_of(&key);
            let Some(shard) = next.shards.get_mut(at) else { continue };
            let shard = Arc::make_mut(shard);
            let is_put = record.is_some();
            let added = record.as_ref().map_or(0, |record| record.size(&key));
            let removed = match record {
                Some(record) => shard.insert(key.clone(), record),
                None => shard.remove(&key),
            };
            let removed_size = removed.as_ref().map_or(0, |record| record.size(&key));
            next.records = (next.records + usize::from(is_put)).saturating_sub(usize::from(removed.is_some()));
            next.bytes = (next.bytes + added).saturating_sub(removed_size);
        }
        let limits = self.shape.limits;
        if next.records > limits.records || next.bytes > limits.bytes {
            return Err(OverLimit { records: next.records, bytes: next.bytes, limits });
        }
        Ok(next)
    }

    fn shard_of(&self, key: &str) -> usize {
        usize::from(self.hasher.hash_one(key).to_le_bytes()[0])
    }
}

/// Every source's table as one check sees it; a source not loaded yet has none.
#[derive(Debug, Clone, Default)]
pub struct Data {
    tables: HashMap<Arc<str>, Arc<Table>>,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'d> {
    /// The source has not loaded yet (or loaded under another shape): nothing can be judged.
    NotLoaded,
    /// The source holds no record for the key.
    Missing,
    /// The record, and the shape it was built with.
    Found(&'d Record, &'d Shape),
}

impl Data {
    /// The same data with `source`'s table replaced.
    pub fn with_table(&self, source: Arc<str>, table: Arc<Table>) -> Self {
        let mut tables = self.tables.clone();
        tables.insert(source, table);
        Self { tables }
    }

    /// The same data without `source` (removed from the policies, or restarting).
    pub fn without(&self, source: &str) -> Self {
        let mut tables = self.tables.clone();
        tables.remove(source);
        Self { tables }
    }

    /// A source's table, when loaded.
    pub fn table(&self, source: &str) -> Option<&Arc<Table>> {
        self.tables.get(source)
    }

    /// The record of `key` in `source`, read only when the table was built with `shape`.
    pub fn lookup(&self, source: &str, shape: &Shape, key: &str) -> Lookup<'_> {
        match self.tables.get(source) {
            Some(table) if std::ptr::eq(&*table.shape, shape) || *table.shape == *shape => match table.get(key) {
                Some(record) => Lookup::Found(record, &table.shape),
                None => Lookup::Missing,
            },
            _ => Lookup::NotLoaded,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn shape(limits: Limits) -> Arc<Shape> {
        Arc::new(Shape {
            key: "_id".into(),
            fields: Box::from([Box::from("account"), Box::from("apps"), Box::from("profile.team")]),
            header: Some(HeaderShape { fields: Box::from([Box::from("name"), Box::from("account")]), max_bytes: 80 }),
            limits,
        })
    }

    const ROOMY: Limits = Limits { records: 1000, bytes: 1 << 20 };

    fn put(shape: &Shape, document: Value) -> Change {
        let (key, record) = Record::from_document(shape, &document).unwrap();
        Change::Put(key, Arc::new(record))
    }

    #[test]
    fn a_document_keeps_its_shapes_fields_as_text_and_drops_the_rest() {
        let shape = shape(ROOMY);
        let document = json!({"_id": "ana", "account": 7, "apps": ["a1", 2, true, null, {"x": 1}], "profile": {"team": "ops"}, "secret": "s"});
        let (key, record) = Record::from_document(&shape, &document).unwrap();
        assert_eq!(&*key, "ana");
        let values = |field| record.field(&shape, field).unwrap().values().collect::<Vec<_>>();
        assert_eq!(values("account"), ["7"]);
        assert_eq!(values("apps"), ["a1", "2", "true"]);
        assert_eq!(values("profile.team"), ["ops"]);
        assert!(record.field(&shape, "secret").is_none());
    }

    #[test]
    fn the_header_is_base64url_of_the_compact_json_of_its_fields_only() {
        let shape = shape(ROOMY);
        let document = json!({"_id": 1, "name": "Ana", "account": "acme", "apps": ["a1"]});
        let (key, record) = Record::from_document(&shape, &document).unwrap();
        assert_eq!(&*key, "1");
        let decoded = URL_SAFE_NO_PAD.decode(record.header().unwrap()).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&decoded).unwrap(), json!({"name": "Ana", "account": "acme"}));
    }

    #[test]
    fn documents_without_a_key_or_with_a_header_too_long_are_refused() {
        let shape = shape(ROOMY);
        assert_eq!(Record::from_document(&shape, &json!(["x"])), Err(RecordError::NotAnObject));
        assert_eq!(Record::from_document(&shape, &json!({"_id": null})), Err(RecordError::NoKey("_id".into())));
        let long = json!({"_id": "a", "name": "n".repeat(100)});
        assert!(matches!(Record::from_document(&shape, &long), Err(RecordError::HeaderTooLarge { limit: 80, .. })));
    }

    #[test]
    fn a_change_makes_a_new_table_and_leaves_the_one_before_as_it_was() {
        let shape = shape(ROOMY);
        let first = Table::new(shape.clone()).apply([put(&shape, json!({"_id": "ana", "apps": ["a1"]}))]).unwrap();
        let second = first
            .apply([put(&shape, json!({"_id": "ana", "apps": ["a2"]})), put(&shape, json!({"_id": "bo"}))])
            .unwrap();
        let apps = |table: &Table| {
            table.get("ana").unwrap().field(&shape, "apps").unwrap().values().collect::<Vec<_>>().join(",")
        };
        assert_eq!((apps(&first), first.records()), ("a1".into(), 1));
        assert_eq!((apps(&second), second.records()), ("a2".into(), 2));
        let third = second.apply([Change::Remove("ana".into()), Change::Remove("nobody".into())]).unwrap();
        assert!(third.get("ana").is_none());
        assert_eq!(third.records(), 1);
        assert_eq!(third.bytes(), third.get("bo").unwrap().size("bo"));
    }

    #[test]
    fn a_change_over_the_limits_is_refused_whole() {
        let shape = shape(Limits { records: 2, bytes: 1 << 20 });
        let table = Table::new(shape.clone()).apply([put(&shape, json!({"_id": "a"}))]).unwrap();
        let over = table.apply([put(&shape, json!({"_id": "b"})), put(&shape, json!({"_id": "c"}))]);
        assert_eq!(over.unwrap_err().records, 3);
        let bytes = Limits { records: 10, bytes: 100 };
        let small = shape_with(bytes);
        assert!(
            Table::new(small.clone()).apply([put(&small, json!({"_id": "a", "account": "x".repeat(50)}))]).is_err()
        );
    }

    fn shape_with(limits: Limits) -> Arc<Shape> {
        Arc::new(Shape { header: None, ..(*shape(limits)).clone() })
    }

    #[test]
    fn a_lookup_tells_not_loaded_missing_and_found_apart_and_ignores_a_table_of_another_shape() {
        let shape = shape(ROOMY);
        let data = Data::default();
        assert!(matches!(data.lookup("users", &shape, "ana"), Lookup::NotLoaded));
        let table = Table::new(shape.clone()).apply([put(&shape, json!({"_id": "ana"}))]).unwrap();
        let data = data.with_table("users".into(), Arc::new(table));
        assert!(matches!(data.lookup("users", &shape, "ana"), Lookup::Found(..)));
        assert!(matches!(data.lookup("users", &shape, "bo"), Lookup::Missing));
        let other = Shape { key: "email".into(), ..(*shape).clone() };
        assert!(matches!(data.lookup("users", &other, "ana"), Lookup::NotLoaded));
        assert!(matches!(data.without("users").lookup("users", &shape, "ana"), Lookup::NotLoaded));
    }
}
