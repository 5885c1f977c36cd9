# frozen_string_literal: true

# stepgraph: step handlers in Ruby, orchestrated by a Rust engine.
#
# Write handlers as subclasses of Stepgraph::StepHandler or with
# Stepgraph.handler, then run tasks with Stepgraph::Engine.embedded (no
# services needed) or serve them in a PostgreSQL deployment with
# Stepgraph::Worker; Stepgraph::Client talks to the HTTP API.
module Stepgraph; end

require_relative "stepgraph/version"
require_relative "stepgraph/errors"
require_relative "stepgraph/stepgraph_native"
require_relative "stepgraph/handlers"
require_relative "stepgraph/engine"
require_relative "stepgraph/worker"
require_relative "stepgraph/client"
