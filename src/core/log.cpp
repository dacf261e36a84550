#include "core/log.h"

namespace lathe {
namespace {
LogLevel g_level = LogLevel::kWarn;  // CLI raises it with --verbose
}
LogLevel log_level() { return g_level; }
void set_log_level(LogLevel level) { g_level = level; }
}  // namespace lathe
