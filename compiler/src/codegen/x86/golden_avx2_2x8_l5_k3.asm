0000000000001000  mov rax, 0FFFFFFFFFFh
000000000000100a  vmovq xmm4, rax
000000000000100f  vpmovsxbd ymm4, xmm4
0000000000001014  vmaskmovps ymm0, ymm4, [rdx]
0000000000001019  vmaskmovps ymm1, ymm4, [rdx+14h]
000000000000101f  vxorps ymm2, ymm2, ymm2
0000000000001023  vxorps ymm3, ymm3, ymm3
0000000000001027  vmovups ymm4, [rsi]
000000000000102b  vbroadcastss ymm5, [rdi]
0000000000001030  vfmadd231ps ymm0, ymm4, ymm5
0000000000001035  vbroadcastss ymm6, [rdi+0Ch]
000000000000103b  vfmadd231ps ymm1, ymm4, ymm6
0000000000001040  vmovups ymm4, [rsi+20h]
0000000000001045  vbroadcastss ymm7, [rdi+4]
000000000000104b  vfmadd231ps ymm2, ymm4, ymm7
0000000000001050  vbroadcastss ymm8, [rdi+10h]
0000000000001056  vfmadd231ps ymm3, ymm4, ymm8
000000000000105b  vmovups ymm4, [rsi+40h]
0000000000001060  vbroadcastss ymm9, [rdi+8]
0000000000001066  vfmadd231ps ymm0, ymm4, ymm9
000000000000106b  vbroadcastss ymm10, [rdi+14h]
0000000000001071  vfmadd231ps ymm1, ymm4, ymm10
0000000000001076  vaddps ymm0, ymm0, ymm2
000000000000107a  vaddps ymm1, ymm1, ymm3
000000000000107e  mov rax, 0FFFFFFFFFFh
0000000000001088  vmovq xmm2, rax
000000000000108d  vpmovsxbd ymm2, xmm2
0000000000001092  vxorps ymm4, ymm4, ymm4
0000000000001096  vmaskmovps ymm3, ymm2, [rcx]
000000000000109b  vaddps ymm0, ymm0, ymm3
000000000000109f  vmaxps ymm0, ymm4, ymm0
00000000000010a3  vmaskmovps [rdx], ymm2, ymm0
00000000000010a8  vmaskmovps ymm3, ymm2, [rcx]
00000000000010ad  vaddps ymm1, ymm1, ymm3
00000000000010b1  vmaxps ymm1, ymm4, ymm1
00000000000010b5  vmaskmovps [rdx+14h], ymm2, ymm1
00000000000010bb  vzeroupper
00000000000010be  ret
