# frozen_string_literal: true

# The Ruby suite runs against the installed gem (scripts/ruby-deps), from any directory.
require "minitest/autorun"
require "stepgraph"
require "tmpdir"
require "fileutils"

ROOT = File.expand_path("../..", __dir__)
TEMPLATES = File.join(ROOT, "tests", "fixtures", "templates")
SIX_16 = 6**16
SIX_64 = 6**64

# The seed's math handlers, written as a Ruby user would.
class Square < Stepgraph::StepHandler
  handler_name "math.square"

  def call(ctx)
    deps = ctx.dependency_results.values.map { |v| Integer(v) }
    x = deps.first || ctx.input.fetch("even_number")
    x * x
  end
end

MULTIPLY_AND_SQUARE = Stepgraph.handler("math.multiply_and_square") do |ctx|
  product = ctx.dependency_results.values.map { |v| Integer(v) }.reduce(1, :*)
  product * product
end

ROUTING = Stepgraph.handler("approval.routing_decision") do |ctx|
  amount = ctx.input.fetch("amount")
  if amount < 1000 then Stepgraph::Decision.new(["auto_approve"])
  elsif amount < 5000 then Stepgraph::Decision.new(["manager_approval"])
  else Stepgraph::Decision.new(%w[manager_approval finance_review])
  end
end

ANALYZE = Stepgraph.handler("csv.analyze") do |ctx|
  rows = File.foreach(ctx.input.fetch("csv_file_path")).count - 1
  Stepgraph::Batch.new(total_items: rows, batch_size: ctx.batch_size)
end

ALL_HANDLERS = [Square, MULTIPLY_AND_SQUARE, ROUTING, ANALYZE].freeze

def write_templates(dir, files)
  files.each { |name, body| File.write(File.join(dir, name), body) }
  dir
end
