//! CSV batch processing: the analyzer splits the file into batches, each
//! worker computes inventory metrics for its rows, the aggregate merges them.
//! Money and ratings are integers (cents, tenths) to stay exact.

use crate::handler::{HandlerError, HandlerResult, StepContext, StepHandler, StepOutput};
use async_trait::async_trait;
use serde_json::{json, Value};
use stepgraph_engine::BatchOutcome;

fn csv_path(ctx: &StepContext) -> Result<String, HandlerError> {
    ctx.input
        .get("csv_file_path")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| HandlerError::permanent("task context has no `csv_file_path`"))
}

/// A decimal like `631.85` as an integer of `decimals` places (63185).
pub fn parse_fixed(s: &str, decimals: u32) -> Option<i64> {
    let s = s.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > decimals as usize || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let scale = 10i64.checked_pow(decimals)?;
    let whole: i64 = int.parse().ok()?;
    let frac_val: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>()
            .ok()?
            .checked_mul(10i64.pow(decimals - frac.len() as u32))?
    };
    let signed = if int.starts_with('-') {
        -frac_val
    } else {
        frac_val
    };
    whole.checked_mul(scale)?.checked_add(signed)
}

#[derive(Debug, Default, PartialEq)]
struct Metrics {
    processed: u64,
    inventory_value_cents: i64,
    max_price_cents: i64,
    total_stock: i64,
    rating_sum_tenths: i64,
}

/// The task's CSV file, positioned after its header, and the indexes of the
/// price, stock and rating columns.
fn open(
    ctx: &StepContext,
) -> Result<(String, ::csv::Reader<std::fs::File>, [usize; 3]), HandlerError> {
    let path = csv_path(ctx)?;
    // A missing file will not appear by retrying soon enough to matter.
    let mut reader = ::csv::Reader::from_path(&path)
        .map_err(|e| HandlerError::permanent(format!("cannot open {path}: {e}")))?;
    let headers = reader
        .headers()
        .map_err(|e| HandlerError::permanent(format!("{path}: {e}")))?;
    let mut columns = [0; 3];
    for (slot, name) in columns.iter_mut().zip(["price", "stock", "rating"]) {
        *slot = headers.iter().position(|h| h == name).ok_or_else(|| {
            HandlerError::permanent(format!("{path}: CSV has no `{name}` column"))
        })?;
    }
    Ok((path, reader, columns))
}

/// Counts the rows and splits them into batches of the template's batch_size.
pub struct Analyze;

#[async_trait]
impl StepHandler for Analyze {
    async fn call(&self, ctx: &StepContext) -> HandlerResult {
        let (path, mut reader, _) = open(ctx)?;
        let mut rows = 0u64;
        for r in reader.records() {
            r.map_err(|e| HandlerError::permanent(format!("{path}: {e}")))?;
            rows += 1;
        }
        let batch_size = ctx.batch_size.unwrap_or(100);
        Ok(StepOutput::Batch(BatchOutcome::even(rows, batch_size)))
    }
}

/// Inventory metrics for the rows of this worker's cursor.
pub struct ProcessBatch;

#[async_trait]
impl StepHandler for ProcessBatch {
    async fn call(&self, ctx: &StepContext) -> HandlerResult {
        let cursor = ctx.cursor.clone().ok_or_else(|| {
            HandlerError::permanent(format!("step `{}` has no batch cursor", ctx.step_name))
        })?;
        let (path, mut reader, [price, stock, rating]) = open(ctx)?;
        let mut m = Metrics::default();
        let rows = reader
            .records()
            .enumerate()
            .skip(cursor.start as usize)
            .take((cursor.end - cursor.start) as usize);
        for (i, r) in rows {
            let r = r.map_err(|e| HandlerError::permanent(format!("{path}: {e}")))?;
            let bad = |col: &str| {
                HandlerError::permanent(format!("{path}: data row {}: bad {col}", i + 1))
            };
            let p = parse_fixed(&r[price], 2).ok_or_else(|| bad("price"))?;
            let s: i64 = r[stock].trim().parse().map_err(|_| bad("stock"))?;
            let rt = parse_fixed(&r[rating], 1).ok_or_else(|| bad("rating"))?;
            // Too big for 64 bits: no retry makes it fit.
            let overflow = |what: &str| {
                HandlerError::permanent(format!(
                    "{path}: data row {}: the {what} overflows 64 bits",
                    i + 1
                ))
            };
            m.processed += 1;
            m.inventory_value_cents = p
                .checked_mul(s)
                .and_then(|v| m.inventory_value_cents.checked_add(v))
                .ok_or_else(|| overflow("inventory value"))?;
            m.max_price_cents = m.max_price_cents.max(p);
            m.total_stock = m
                .total_stock
                .checked_add(s)
                .ok_or_else(|| overflow("total stock"))?;
            m.rating_sum_tenths = m
                .rating_sum_tenths
                .checked_add(rt)
                .ok_or_else(|| overflow("rating sum"))?;
        }
        Ok(StepOutput::Success(json!({
            "batch_no": cursor.batch_no,
            "processed": m.processed,
            "inventory_value_cents": m.inventory_value_cents,
            "max_price_cents": m.max_price_cents,
            "total_stock": m.total_stock,
            "rating_sum_tenths": m.rating_sum_tenths,
        })))
    }
}

/// Merges every batch worker's metrics.
pub struct Aggregate;

#[async_trait]
impl StepHandler for Aggregate {
    async fn call(&self, ctx: &StepContext) -> HandlerResult {
        let mut total = Metrics::default();
        let mut per_batch = Vec::new();
        for (name, r) in &ctx.dependency_results {
            let field = |f: &str| {
                r.get(f).and_then(Value::as_i64).ok_or_else(|| {
                    HandlerError::permanent(format!("result of `{name}` has no integer `{f}`"))
                })
            };
            let overflow = |what: &str| {
                HandlerError::permanent(format!(
                    "the {what} overflows 64 bits at the result of `{name}`"
                ))
            };
            let add = |sum: i64, f: &str| {
                sum.checked_add(field(f)?)
                    .ok_or_else(|| overflow(&f.replace('_', " ")))
            };
            total.processed += field("processed")? as u64;
            let value = field("inventory_value_cents")?;
            total.inventory_value_cents =
                add(total.inventory_value_cents, "inventory_value_cents")?;
            total.max_price_cents = total.max_price_cents.max(field("max_price_cents")?);
            total.total_stock = add(total.total_stock, "total_stock")?;
            total.rating_sum_tenths = add(total.rating_sum_tenths, "rating_sum_tenths")?;
            per_batch.push(value);
        }
        Ok(StepOutput::Success(json!({
            "total_processed": total.processed,
            "worker_count": ctx.dependency_results.len(),
            "total_inventory_value_cents": total.inventory_value_cents,
            "max_price_cents": total.max_price_cents,
            "total_stock": total.total_stock,
            "rating_sum_tenths": total.rating_sum_tenths,
            "per_batch_inventory_value_cents": per_batch,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_fixed;

    #[test]
    fn fixed_point_parsing_is_exact() {
        assert_eq!(parse_fixed("631.85", 2), Some(63185));
        assert_eq!(parse_fixed("5.5", 2), Some(550));
        assert_eq!(parse_fixed("12", 2), Some(1200));
        assert_eq!(parse_fixed("1.6", 1), Some(16));
        assert_eq!(parse_fixed("-1.25", 2), Some(-125));
        assert_eq!(parse_fixed("1.234", 2), None);
        assert_eq!(parse_fixed("92233720368547758.07", 2), Some(i64::MAX));
        assert_eq!(parse_fixed("92233720368547758.08", 2), None, "overflow");
        assert_eq!(parse_fixed("922337203685477580", 2), None, "overflow");
        assert_eq!(parse_fixed("abc", 2), None);
    }
}
