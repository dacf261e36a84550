// /metrics: Prometheus text exposition (version 0.0.4) of the engine's state and the server's
// response counts. Gauges for what is true now, counters (_total) for what only grows.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "server/engine_loop.h"

namespace lathe::server {

std::string render_metrics(const EngineStats& engine, const std::map<int, int64_t>& responses_by_status);

}  // namespace lathe::server
