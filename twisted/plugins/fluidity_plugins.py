from twisted.application.service import ServiceMaker

fluidity_server = ServiceMaker(
    "Fluidity server", "tunnel.taps_server", "Fluidity tunnel server (mTLS HTTP/2 CONNECT)", "fluidity-server"
)
fluidity_agent = ServiceMaker("Fluidity agent", "tunnel.taps_agent", "Fluidity local proxy agent", "fluidity-agent")
