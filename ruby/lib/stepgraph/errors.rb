# frozen_string_literal: true

require "timeout"

module Stepgraph
  # Every exception stepgraph raises includes this module, so
  # `rescue Stepgraph::Error` catches them all. It is a module (a tag) and
  # not a class so that TaskTimeoutError can also be Ruby's own
  # Timeout::Error.
  module Error; end

  # The class of stepgraph's exceptions, but TaskTimeoutError.
  class StepgraphError < StandardError
    include Error
  end

  # Options, STEPGRAPH_* settings or templates that cannot work.
  class ConfigurationError < StepgraphError; end
  class TemplateNotFoundError < StepgraphError; end
  # No task with that id (never created here, or removed by retention).
  class TaskNotFoundError < StepgraphError; end
  # The context fails the template's input_schema.
  class InvalidContextError < StepgraphError; end
  class ConflictError < StepgraphError; end
  # The database or broker failed or is unreachable.
  class BackendUnavailableError < StepgraphError; end
  class ForkedProcessError < StepgraphError; end
  class ShutDownError < StepgraphError; end
  class EventNotPendingError < StepgraphError; end

  # A task did not end in the time given: rescued as Timeout::Error too.
  class TaskTimeoutError < Timeout::Error
    include Error
  end
end
