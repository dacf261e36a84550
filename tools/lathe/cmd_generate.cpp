#include "commands.h"
#include "core/error.h"

namespace lathe::cli {
void add_generate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "(not yet implemented)");
  cmd->callback([] { fail(ErrorKind::kUnsupported, "'lathe generate' is not implemented yet"); });
}
}  // namespace lathe::cli
