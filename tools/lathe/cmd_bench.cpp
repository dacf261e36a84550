#include "commands.h"
#include "core/error.h"

namespace lathe::cli {
void add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "(not yet implemented)");
  cmd->callback([] { fail(ErrorKind::kUnsupported, "'lathe bench' is not implemented yet"); });
}
}  // namespace lathe::cli
