"""The command line: the parser, the commands, the renderers and the demo. The only place that prints."""
