// Placeholder until the template command lands.
#include "commands.h"
#include "core/error.h"

namespace lathe::cli {
void add_template_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("template", "(not yet implemented)");
  cmd->callback([] { fail(ErrorKind::kUnsupported, "'lathe template' is not implemented yet"); });
}
}  // namespace lathe::cli
