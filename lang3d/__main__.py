from lang3d.cli import main

main()
