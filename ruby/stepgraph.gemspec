# frozen_string_literal: true

require_relative "lib/stepgraph/version"

Gem::Specification.new do |spec|
  spec.name = "stepgraph"
  spec.version = Stepgraph::VERSION
  spec.summary = "Workflow orchestration with step handlers in Ruby, hosted by a Rust engine"
  spec.description = "Write stepgraph step handlers in Ruby (Stepgraph::StepHandler or Stepgraph.handler); " \
                     "the Rust engine (a Magnus extension, built with cargo at install) runs them in-process."
  spec.license = "MIT"
  spec.authors = ["stepgraph"]
  spec.require_paths = ["lib"]
  if ENV["STEPGRAPH_GEM_PLATFORM"]
    # The platform gem (scripts/package): the extension precompiled for the
    # Ruby that built it, so installing needs no compiler.
    spec.platform = Gem::Platform.new("x86_64-linux")
    minor = RUBY_VERSION[/\A\d+\.\d+/]
    spec.required_ruby_version = ["~> #{minor}.0"]
    spec.files = Dir["lib/**/*.rb", "lib/stepgraph/stepgraph_native.so", "sig/**/*.rbs"]
  else
    spec.required_ruby_version = ">= 3.0"
    spec.requirements = ["cargo (Rust 1.85 or newer) and libclang, to build the native extension"]
    spec.files = Dir["lib/**/*.rb", "sig/**/*.rbs", "ext/stepgraph/extconf.rb", "README.md"] +
                 Dir["ext/stepgraph/rust/**/*"].reject { |f| File.directory?(f) || f.include?("/target/") }
    spec.extensions = ["ext/stepgraph/extconf.rb"]
  end
end
