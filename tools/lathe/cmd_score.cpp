#include "commands.h"
#include "core/error.h"

namespace lathe::cli {
void add_score_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("score", "(not yet implemented)");
  cmd->callback([] { fail(ErrorKind::kUnsupported, "'lathe score' is not implemented yet"); });
}
}  // namespace lathe::cli
