# frozen_string_literal: true

require_relative "lib/stepgraph/version"

# A platform gem: the extension (lib/stepgraph/stepgraph_native.so, put
# there by scripts/ruby-gem from the workspace's release build) precompiled
# for the Ruby and platform that build it, so installing needs no compiler.
Gem::Specification.new do |spec|
  spec.name = "stepgraph"
  spec.version = Stepgraph::VERSION
  spec.summary = "Workflow orchestration with step handlers in Ruby, hosted by a Rust engine"
  spec.description = "Write stepgraph step handlers in Ruby (Stepgraph::StepHandler or Stepgraph.handler); " \
                     "the Rust engine (a Magnus extension, precompiled) runs them in-process."
  spec.license = "MIT"
  spec.authors = ["stepgraph"]
  spec.require_paths = ["lib"]
  spec.platform = Gem::Platform.local
  # The extension is built against this Ruby's ABI.
  spec.required_ruby_version = ["~> #{RUBY_VERSION[/\A\d+\.\d+/]}.0"]
  spec.files = Dir["lib/**/*.rb", "lib/stepgraph/stepgraph_native.so", "sig/**/*.rbs"]
end
