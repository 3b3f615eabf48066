//! FOCUS rows as a Parquet file: one optional column per [`COLUMNS`] entry, typed by its
//! [`Kind`] (text and `Tags` as UTF-8, decimals as DOUBLE, date-times as UTC millisecond
//! timestamps, counts as INT64), Snappy-compressed, in row groups of [`ROW_GROUP`] rows so a
//! year of charges is never held twice in memory.

use std::io::Write;
use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Repetition, TimeUnit, Type as Physical};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

use super::{cells, Cell, Charge, Kind, COLUMNS};

/// Rows per row group.
const ROW_GROUP: usize = 64 * 1024;

fn schema() -> Result<Type, ParquetError> {
    let mut fields = Vec::with_capacity(COLUMNS.len());
    for (name, kind) in COLUMNS {
        let (physical, logical) = match kind {
            Kind::Text => (Physical::BYTE_ARRAY, Some(LogicalType::String)),
            Kind::Decimal => (Physical::DOUBLE, None),
            Kind::DateTime => (
                Physical::INT64,
                Some(LogicalType::timestamp(true, TimeUnit::MILLIS)),
            ),
            Kind::Count => (Physical::INT64, None),
        };
        let field = Type::primitive_type_builder(name, physical)
            .with_repetition(Repetition::OPTIONAL)
            .with_logical_type(logical)
            .build()?;
        fields.push(Arc::new(field));
    }
    Type::group_type_builder("focus")
        .with_fields(fields)
        .build()
}

/// Writes `charges` as a FOCUS Parquet file.
pub fn write(
    charges: &[Charge],
    account: &str,
    out: impl Write + Send,
) -> Result<(), ParquetError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("tollgate {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut writer = SerializedFileWriter::new(out, Arc::new(schema()?), Arc::new(props))?;
    for group in charges.chunks(ROW_GROUP) {
        let rows: Vec<Vec<Cell>> = group.iter().map(|c| cells(c, account)).collect();
        let mut row_group = writer.next_row_group()?;
        let mut index = 0;
        while let Some(mut column) = row_group.next_column()? {
            let kind = COLUMNS[index].1;
            let cells = rows.iter().map(|r| &r[index]);
            // Definition level 1: a value; 0: null (every column is optional).
            let defs: Vec<i16> = cells.clone().map(|c| i16::from(*c != Cell::Null)).collect();
            match kind {
                Kind::Text => {
                    let values: Vec<ByteArray> = cells
                        .filter_map(|c| match c {
                            Cell::Text(s) => Some(ByteArray::from(s.as_str())),
                            _ => None,
                        })
                        .collect();
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(&values, Some(&defs), None)?;
                }
                Kind::Decimal => {
                    let values: Vec<f64> = cells.filter_map(Cell::as_f64).collect();
                    column
                        .typed::<DoubleType>()
                        .write_batch(&values, Some(&defs), None)?;
                }
                Kind::DateTime | Kind::Count => {
                    let values: Vec<i64> = cells
                        .filter_map(|c| match c {
                            Cell::DateTime(ms) => Some(*ms),
                            Cell::Count(n) => Some(i64::try_from(*n).unwrap_or(i64::MAX)),
                            _ => None,
                        })
                        .collect();
                    column
                        .typed::<Int64Type>()
                        .write_batch(&values, Some(&defs), None)?;
                }
            }
            column.close()?;
            index += 1;
        }
        row_group.close()?;
    }
    writer.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    fn charge(day: i64, team: Option<&str>, cost: i64) -> Charge {
        Charge {
            day_ms: day * 86_400_000,
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            api: "chat_completions".into(),
            key_id: Some("key_1".into()),
            team: team.map(String::from),
            project: None,
            workflow: None,
            cost_center: None,
            requests: 3,
            input_tokens: 1000,
            cached_tokens: 10,
            output_tokens: 250,
            reasoning_tokens: 0,
            estimated: 1,
            cost_micro_usd: cost,
            saved_micro_usd: 0,
        }
    }

    #[test]
    fn the_file_reads_back_with_every_value_and_null_in_its_column() {
        let charges = [
            charge(20_000, Some("search"), 6_000),
            charge(20_001, None, 7),
        ];
        let mut bytes = Vec::new();
        write(&charges, "node-a", &mut bytes).unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 2);
        let rows: Vec<_> = reader
            .get_row_iter(None)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (row, c) in rows.iter().zip(&charges) {
            let expected = cells(c, "node-a");
            let got: Vec<(&String, &Field)> = row.get_column_iter().collect();
            assert_eq!(got.len(), COLUMNS.len());
            for ((name, field), cell) in got.into_iter().zip(expected) {
                let same = match (&cell, field) {
                    (Cell::Null, Field::Null) => true,
                    (Cell::Text(s), Field::Str(f)) => s == f,
                    (Cell::Decimal { .. }, Field::Double(f)) => cell.as_f64() == Some(*f),
                    (Cell::DateTime(ms), Field::TimestampMillis(f)) => ms == f,
                    (Cell::Count(n), Field::Long(f)) => *n as i64 == *f,
                    _ => false,
                };
                assert!(same, "{name}: wrote {cell:?}, read {field:?}");
            }
        }
    }
}
