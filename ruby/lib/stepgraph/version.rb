# frozen_string_literal: true

module Stepgraph
  VERSION = "0.1.0"
end
