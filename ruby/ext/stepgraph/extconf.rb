# frozen_string_literal: true
require "tmpdir"

# Builds the Magnus extension (crate stepgraph-ruby, vendored under rust/ by
# scripts/ruby-deps) with cargo, without the rb_sys gem. RubyGems runs
# `make clean`, `make` and `make install sitearchdir=...` on the Makefile
# written here. The cargo target directory is a temporary one, removed
# after the build (or STEPGRAPH_CARGO_TARGET_DIR, kept, to reuse builds),
# so none is left inside the installed gem.

require "rbconfig"

def find_cargo
  candidates = [ENV.fetch("CARGO", nil)]
  candidates += ENV.fetch("PATH", "").split(File::PATH_SEPARATOR).map { |d| File.join(d, "cargo") }
  candidates << File.join(Dir.home, ".cargo", "bin", "cargo")
  candidates.compact.find { |c| File.executable?(c) } ||
    abort("stepgraph: cargo not found (install Rust with rustup, or set CARGO)")
end

manifest = File.join(__dir__, "rust", "bindings", "ruby", "Cargo.toml")
abort("stepgraph: #{manifest} is missing (build the gem with scripts/ruby-deps)") unless File.exist?(manifest)
kept = ENV.fetch("STEPGRAPH_CARGO_TARGET_DIR", nil)
target = kept || File.join(Dir.tmpdir, "stepgraph-gem-#{Process.pid}")
dlext = RbConfig::CONFIG["DLEXT"]

File.write("Makefile", <<~MAKE)
  CARGO = #{find_cargo}
  TARGET = #{target}
  # Where `make install` puts the extension: RubyGems sets it through RbConfig.
  sitearchdir = #{RbConfig::CONFIG["sitearchdir"]}

  all: stepgraph_native.#{dlext}

  stepgraph_native.#{dlext}:
  \t$(CARGO) build --release --manifest-path #{manifest} -p stepgraph-ruby --target-dir $(TARGET)
  \tcp $(TARGET)/release/libstepgraph_native.so stepgraph_native.#{dlext}
  #{kept ? '' : "\trm -rf $(TARGET)"}

  install: stepgraph_native.#{dlext}
  \tmkdir -p $(sitearchdir)/stepgraph
  \tcp stepgraph_native.#{dlext} $(sitearchdir)/stepgraph/

  clean:
  \trm -f stepgraph_native.#{dlext}

  .PHONY: all install clean
MAKE
