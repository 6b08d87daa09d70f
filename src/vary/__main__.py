from vary.cli import main

main()
