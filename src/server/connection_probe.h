// Whether an HTTP client is still there. cpp-httplib 0.11 gives a handler no way to see its
// connection (Request::is_connection_closed came in later versions), and a write to a socket the
// peer closed still succeeds once, so a handler waiting on the engine would notice a departed
// client only two tokens later, or never while it waits for its first token. The probe finds the
// handler's own socket once (the accepted TCP socket whose local port and peer address match the
// request's) and polls it for the peer's FIN or RST, which costs one poll() per check.
#pragma once

#include <string>

namespace lathe::server {

class ConnectionProbe {
 public:
  ConnectionProbe(const std::string& remote_addr, int remote_port, int local_port);
  bool found() const { return fd_ >= 0; }
  // True when the peer closed or reset the connection (false when the socket was not found).
  bool closed() const;

 private:
  int fd_ = -1;
};

}  // namespace lathe::server
