from experiments.sortednet_vision import main

main()
