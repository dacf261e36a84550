#include "commands.h"
#include "core/error.h"

namespace lathe::cli {
void add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "(not yet implemented)");
  cmd->callback([] { fail(ErrorKind::kUnsupported, "'lathe info' is not implemented yet"); });
}
}  // namespace lathe::cli
