"""Reading sources and turning them into indexed documents."""
