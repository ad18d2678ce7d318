from lang3d.training.cli import console_main

console_main()
