//! Handlers for the fixture workflows (`tests/fixtures/templates`): the seed's
//! math shapes, conditional approval, and CSV batch processing.

pub mod approval;
pub mod csv;
pub mod math;

use crate::handler::HandlerRegistry;

/// Every example handler under the name the fixture templates use.
pub fn registry() -> HandlerRegistry {
    let mut r = HandlerRegistry::new();
    r.register("math.square", math::Square)
        .register("math.multiply_and_square", math::MultiplyAndSquare)
        .register("approval.validate_request", approval::ValidateRequest)
        .register("approval.routing_decision", approval::RoutingDecision)
        .register("approval.approve", approval::Approve)
        .register("approval.finalize", approval::Finalize)
        .register("csv.analyze", csv::Analyze)
        .register("csv.process_batch", csv::ProcessBatch)
        .register("csv.aggregate", csv::Aggregate);
    r
}
