"""``twistd -ny heartbeat.tac``: the same service as the plugin, from the environment."""

from twisted.application.service import Application

from heartbeat.daemon.tap import Options, makeService

options = Options()
options.parseOptions([])
application = Application("heartbeat")
makeService(options).setServiceParent(application)
