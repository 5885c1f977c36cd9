# frozen_string_literal: true

require_relative "helper"
require "json"

# The language boundary as the Rust types define it (workers/boundary.schema.json,
# generated from them): the Ruby side reads exactly the fields of a StepEvent
# and reports only StepResults. Ruby has no type checker here (`rbs validate`
# checks the signatures of sig/boundary.rbs, not the code), so this is the
# check that fails when a field is renamed in Rust and not here.
class BoundaryTest < Minitest::Test
  SCHEMA = JSON.parse(File.read(File.expand_path("../../workers/boundary.schema.json", __dir__)))
  DEFS = SCHEMA.fetch("$defs")

  # A Hash that remembers which keys were read.
  class Recording < Hash
    attr_reader :read

    def initialize(hash)
      super()
      update(hash)
      @read = []
    end

    def [](key)
      @read << key
      super
    end

    def fetch(key, *args, &block)
      @read << key
      super
    end
  end

  def sample(schema)
    schema = DEFS.fetch(schema["$ref"].delete_prefix("#/$defs/")) if schema.is_a?(Hash) && schema["$ref"]
    schema = schema["anyOf"].first if schema.is_a?(Hash) && schema["anyOf"]
    type = schema.is_a?(Hash) ? Array(schema["type"]).first : nil
    case type
    when "integer" then 1
    when "string" then "text"
    when "object" then (schema["properties"] || {}).to_h { |k, v| [k, sample(v)] }
    when "array" then []
    else {}
    end
  end

  def test_context_reads_every_field_of_a_step_event_and_no_other
    fields = DEFS.fetch("StepEvent").fetch("properties")
    event = Recording.new(fields.to_h { |k, v| [k, sample(v)] })
    Stepgraph::Context.new(event)
    # The handler pool reads the event's id and handler; the Context the rest.
    read = event.read.uniq + %w[event_id]
    assert_empty read - fields.keys, "the Ruby side reads fields a StepEvent does not have"
    assert_empty fields.keys - read, "the Ruby side ignores fields of a StepEvent"
  end

  def assert_step_result(outcome)
    variants = DEFS.fetch("StepResult").fetch("oneOf")
    variant = variants.find { |v| v.dig("properties", "status", "const") == outcome["status"] }
    refute_nil variant, "no StepResult has status #{outcome['status'].inspect}"
    check_object(variant, outcome, "StepResult")
  end

  def check_object(schema, value, at)
    schema = DEFS.fetch(schema["$ref"].delete_prefix("#/$defs/")) if schema["$ref"]
    return unless schema["properties"]

    assert_kind_of Hash, value, at
    assert_empty schema.fetch("required", []) - value.keys, "#{at} lacks required fields"
    assert_empty value.keys - schema["properties"].keys, "#{at} has fields the schema does not"
    schema["properties"].each do |k, v|
      check_object(v, value[k], "#{at}.#{k}") if value.key?(k) && v.is_a?(Hash) && v["$ref"]
    end
  end

  def test_every_outcome_the_ruby_side_reports_is_a_step_result
    ctx = Stepgraph::Context.new(DEFS.fetch("StepEvent").fetch("properties").to_h { |k, v| [k, sample(v)] })
    handlers = [
      Stepgraph.handler("ok") { |_| { "x" => 1 } },
      Stepgraph.handler("decide") { |_| Stepgraph::Decision.new(["a"]) },
      Stepgraph.handler("batch") { |_| Stepgraph::Batch.new(total_items: 5, batch_size: 2) },
      Stepgraph.handler("permanent") { |_| raise Stepgraph::PermanentError, "no" },
      Stepgraph.handler("retry") { |_| raise Stepgraph::RetryableError.new("later", retry_after: 1.5) },
      Stepgraph.handler("boom") { |_| raise ArgumentError, "bad" }
    ]
    statuses = handlers.map do |h|
      outcome = Stepgraph::Outcome.run(h, ctx)
      assert_step_result(outcome)
      outcome["status"]
    end
    assert_equal %w[success decision batch failure failure failure], statuses
    assert_step_result(Stepgraph::Outcome.not_json(ctx, JSON::GeneratorError.new("NaN")))
  end
end
