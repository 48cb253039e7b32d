"""Images in, a Hub-layout ControlNet dataset out: sources, the builder, the card and push."""
