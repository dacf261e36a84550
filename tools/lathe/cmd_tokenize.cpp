// Placeholder until the tokenize command lands.
#include "commands.h"
#include "core/error.h"

namespace lathe::cli {
void add_tokenize_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "(not yet implemented)");
  cmd->callback([] { fail(ErrorKind::kUnsupported, "'lathe tokenize' is not implemented yet"); });
}
}  // namespace lathe::cli
