#include "commands.h"
#include "core/error.h"

namespace lathe::cli {
void add_perplexity_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("perplexity", "(not yet implemented)");
  cmd->callback([] { fail(ErrorKind::kUnsupported, "'lathe perplexity' is not implemented yet"); });
}
}  // namespace lathe::cli
