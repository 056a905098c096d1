from controller._cli import main

main()
