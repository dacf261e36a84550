#include "commands.h"
#include "core/error.h"

namespace lathe::cli {
void add_chat_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("chat", "(not yet implemented)");
  cmd->callback([] { fail(ErrorKind::kUnsupported, "'lathe chat' is not implemented yet"); });
}
}  // namespace lathe::cli
